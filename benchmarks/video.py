"""Real-time video: frames/s of `enet predict`'s whole path per runtime, beside model-only.

The whole path is decode (PyAV) -> resize to the model's size -> infer -> class maps at
the frame's size -> overlay -> encode (H.264), in predict's three threads, on H.264 videos
made from the bundled CamVid frames at 360x480 (CamVid's own size) and 720x960. Model-only
is timed twice: one image per call on every core, as `enet benchmark --what infer` times
it (the latency of a photo), and as the video path runs it (batches of frames split
between runtime copies, predict.VIDEO_PARALLEL), the ceiling of the whole path.
Every figure comes from one run of this script, so they compare as ratios.

Target (issue 19): the whole path at 360x480 in real time (>= 25 frames/s) with the
fastest runtime. Run: python benchmarks/video.py [--size 360x480] [--model RUN] [--write]
(--write: also docs/results/video.{json,md}, the table the predict guide shows)
"""

import argparse
from pathlib import Path

from _common import machine, publish

from enet_cli.core.config import parse_size
from enet_cli.workflows.benchmark import BenchmarkRequest, What, default_variants, run_benchmark

MODEL_ONLY = {  # the `infer` variant that times each video runtime's model
    "keras": "keras",
    "saved_model": "saved_model",
    "tflite_float32": "tflite_float32",
    "tflite_int8": "tflite_int8",
    "onnx": "onnx",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="360x480", help="the model's HEIGHTxWIDTH")
    parser.add_argument("--model", type=Path, default=None, help="a trained run (default: fresh)")
    parser.add_argument("--passes", type=int, default=3, help="timed passes over each video")
    parser.add_argument("--write", action="store_true", help="write docs/results/video.*")
    args = parser.parse_args()
    size = parse_size(args.size)
    at_start = machine()
    print(at_start)
    variants = default_variants("video")
    common = dict(model=args.model, image_size=size, warmup=1)
    video = run_benchmark(
        BenchmarkRequest(what=What.video, variants=variants, iterations=5 * args.passes, **common)
    )
    infer = run_benchmark(
        BenchmarkRequest(
            what=What.infer,
            variants=tuple(MODEL_ONLY[v] for v in variants),
            iterations=20,
            **common,
        )
    )
    model_ms = {m.variant: m.median for m in infer.results}
    whole = {m.variant: m.median for m in video.results}
    sizes = ["360x480", "720x960"]
    print(f"\nmodel at {size[0]}x{size[1]}; frames/s are medians of {args.passes} passes")
    header = (
        "runtime", "model only, one image (ms)", "model only, one image (frames/s)",
        "model only, as the video path runs it (frames/s)",
        *(f"whole path, {s} video (frames/s)" for s in sizes),
    )  # fmt: skip
    rows = []
    for variant in variants:
        ms = model_ms[MODEL_ONLY[variant]]
        rows.append(
            (variant, f"{ms:.1f}", f"{1000 / ms:.1f}", f"{whole[f'{variant} model']:.1f}",
             *(f"{whole[f'{variant} {s}']:.1f}" for s in sizes))
        )  # fmt: skip
    print("| " + " | ".join(header) + " |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    best = max(variants, key=lambda v: whole[f"{v} 360x480"])
    rate = whole[f"{best} 360x480"]
    share = rate / whole[f"{best} model"]
    verdict = "met" if rate >= 25 else "not met"
    weights = "a trained run" if args.model else "freshly initialised: speed does not depend on it"
    summary = (
        f"Model at {size[0]}x{size[1]} ({weights}), medians of {args.passes} "
        f"passes. Fastest whole path at 360x480: {best}, {rate:.1f} frames/s "
        f"({100 * share:.0f}% of its model alone in the same setting); target >= 25 "
        f"frames/s: {verdict}. Load average after: {machine().split('load average ')[1]}."
    )
    print("\n" + summary)
    if args.write:
        command = f"python benchmarks/video.py --size {args.size} --passes {args.passes} --write"
        print(f"wrote {publish('video', command, header, rows, summary, at_start)}")


if __name__ == "__main__":
    main()
