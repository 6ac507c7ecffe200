"""Speed of the synthetic world generator on this machine (target: >= 50 images/s at 256x192).

Measures three things, single process:
  * render: sampling, occlusion, masks and painting (``build_scene``);
  * scene: render + all text annotations (``generate_scene``, what tests and training use);
  * write: the full ``write_world`` (adds PNG encoding, RLE, JSON/pickle/POPE/native files).

Usage: python bench/synth_speed.py [--images N] [--width W] [--height H]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from regiongpt.data.synth.generate import generate_scene, scene_rng
from regiongpt.data.synth.scene import build_scene
from regiongpt.data.synth.writers import write_world


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--height", type=int, default=192)
    args = parser.parse_args()
    n, w, h = args.images, args.width, args.height

    generate_scene(scene_rng(0, 0), w, h)  # warm-up (imports, area factors)
    start = time.perf_counter()
    objects = sum(len(build_scene(scene_rng(1, i), w, h).objects) for i in range(n))
    render = _rate(n, time.perf_counter() - start)

    start = time.perf_counter()
    for i in range(n):
        generate_scene(scene_rng(1, i), w, h)
    scene = _rate(n, time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        write_world(f"{folder}/out", images=n, seed=1, width=w, height=h, progress=False)
        write = _rate(n, time.perf_counter() - start)

    print(f"synthetic world at {w}x{h}, {n} images, {objects / n:.1f} objects/image")
    print(f"render only            : {render:7.1f} images/s")
    print(f"render + annotate      : {scene:7.1f} images/s  (generate_scene; target >= 50)")
    print(f"full write_world       : {write:7.1f} images/s  (PNG + COCO + refer + POPE + native + gallery)")


if __name__ == "__main__":
    main()
