"""Losses shared by recipes: audio reconstruction, GAN, EnCodec's gradient balancer. Pure
functions and small modules; a recipe picks and weighs them."""
