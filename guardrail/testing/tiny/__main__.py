"""``python -m guardrail.testing.tiny FAMILY DIR``: save a tiny random model to DIR (see ``save.py``)."""

from __future__ import annotations

import argparse

from guardrail.testing.tiny.save import SAVABLE, save_tiny


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m guardrail.testing.tiny", description="Write a tiny random model and its processor to DIR."
    )
    parser.add_argument("family", choices=SAVABLE)
    parser.add_argument("dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"wrote a tiny random {args.family} model to {save_tiny(args.family, args.dir, args.seed)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
