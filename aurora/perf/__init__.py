"""What performance is made of, computed and recorded: model FLOPs, MFU against a device's peak,
the collectives each engine issues per step (the traffic model) and a recorder of the real ones."""
