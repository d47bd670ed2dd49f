"""What would stop the GPU machine's offline install (``tools.wheelhouse.problems``), on made-up wheels."""

import zipfile

from tools.wheelhouse import MAX_MIB, image_packages, problems


def _wheel(folder, name: str, version: str, requires: list[str] = (), pad_mib: float = 0):
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        metadata = [f"Name: {name}", f"Version: {version}", *(f"Requires-Dist: {r}" for r in requires)]
        archive.writestr(f"{name}-{version}.dist-info/METADATA", "\n".join(metadata) + "\n")
        if pad_mib:
            archive.writestr("pad.bin", b"\0" * int(pad_mib * 2**20), compress_type=zipfile.ZIP_STORED)
    return path


def test_a_complete_folder_has_no_problems(tmp_path):
    _wheel(tmp_path, "pydantic", "2.14.4", ["pydantic-core==2.50.5", "typing-extensions>=4.14"])
    _wheel(tmp_path, "pydantic_core", "2.50.5", ["typing-extensions>=4.14"])
    _wheel(tmp_path, "typing_extensions", "4.16.0")
    _wheel(tmp_path, "deepspeed", "0.19.8", ["torch", "numpy", 'colorama; sys_platform == "win32"', "tqdm[notebook]"])
    assert problems(tmp_path, {"torch", "numpy", "tqdm"}) == []


def test_each_problem_is_named(tmp_path):
    _wheel(tmp_path, "pydantic", "2.14.4", ["pydantic-core==2.50.5", "annotated-types>=0.6"])
    _wheel(tmp_path, "pydantic_core", "2.41.0")
    _wheel(tmp_path, "hjson", "3.1.0")
    _wheel(tmp_path, "hjson", "3.0.2")
    _wheel(tmp_path, "big", "1.0", pad_mib=MAX_MIB + 1)
    found = problems(tmp_path, set())
    assert "hjson: 2 versions (3.0.2, 3.1.0): keep one" in found
    assert any("needs pydantic-core==2.50.5, but the wheel here is pydantic-core 2.41.0" in p for p in found)
    assert any("needs annotated-types>=0.6, which is neither a wheel here nor in the image" in p for p in found)
    assert any(f"over the {MAX_MIB} MiB that can travel" in p for p in found)
    assert len(found) == 4


def test_an_empty_folder_says_how_to_fill_it(tmp_path):
    assert problems(tmp_path, set()) == [f"{tmp_path}: no wheels (build them with tools/gpu_wheels.sh)"]


def test_the_image_list_names_what_deepspeed_needs_from_there():
    assert {"torch", "numpy", "psutil", "ninja", "msgpack", "py-cpuinfo", "einops", "packaging"} <= image_packages()
