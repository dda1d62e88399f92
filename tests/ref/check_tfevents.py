#!/usr/bin/env python3
"""Reads TensorBoard event files written by medlua (medlua.log.TensorBoard, train.fit) with TensorBoard's
own reader and prints what it finds, so the format can be checked against the real thing.

    # once: TensorBoard into the (git-ignored) reference venv
    tests/ref/venv/bin/pip install tensorboard
    # write a sample file and check it
    build/medlua -e 'local tb = require("medlua.log").TensorBoard("/tmp/tbcheck")
                     for i = 0, 9 do tb:add_scalar("loss", 1 / (i + 1), i) end tb:close()'
    tests/ref/venv/bin/python tests/ref/check_tfevents.py /tmp/tbcheck [--expect-scalars N]

Exit status 0 when every file parses (the reader checks the CRC32C of every record) and, with
--expect-scalars, when the number of scalar points matches.
"""
import argparse
import glob
import os
import sys

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto import event_pb2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("logdir")
    ap.add_argument("--expect-scalars", type=int, default=None)
    a = ap.parse_args()

    files = sorted(glob.glob(os.path.join(a.logdir, "**", "events.out.tfevents.*"), recursive=True))
    if not files:
        print(f"no event files under {a.logdir}")
        return 1
    for path in files:
        # low level: every record's framing and CRCs, then the Event protobuf
        n = 0
        first = None
        for raw in RawEventFileLoader(path, detect_file_replacement=False).Load():
            ev = event_pb2.Event.FromString(raw)
            if first is None:
                first = ev
            n += 1
        print(f"{path}: {n} records, first: wall_time={first.wall_time:.3f} file_version={first.file_version!r}")

    acc = event_accumulator.EventAccumulator(a.logdir, size_guidance={event_accumulator.SCALARS: 0,
                                                                      event_accumulator.IMAGES: 0})
    acc.Reload()
    tags = acc.Tags()
    total = 0
    for tag in sorted(tags["scalars"]):
        ev = acc.Scalars(tag)
        total += len(ev)
        head = ", ".join(f"({e.step}, {e.value:.6g})" for e in ev[:3])
        print(f"scalar {tag}: {len(ev)} points, steps {ev[0].step}..{ev[-1].step}: {head}{', ...' if len(ev) > 3 else ''}")
    for tag in sorted(tags["images"]):
        ims = acc.Images(tag)
        print(f"image {tag}: {len(ims)} images, last {ims[-1].width}x{ims[-1].height} at step {ims[-1].step}, "
              f"{len(ims[-1].encoded_image_string)} PNG bytes")
    print(f"{total} scalar points in {len(tags['scalars'])} tags")
    if a.expect_scalars is not None and total != a.expect_scalars:
        print(f"expected {a.expect_scalars} scalar points")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
