#!/usr/bin/env python
# Copyright 2026 The TEASR authors. Licensed under the Apache License, Version 2.0.
"""Generate a model card (README.md) from `teasr eval` JSON reports, then check it with `ModelCard.load`.

    python scripts/make_model_card.py --eval eval/bicubic.json eval/light.json \\
        --training-recipe docs/teasr-mini-recipe.md --out model_card/README.md

Every number in the card comes from the JSON files.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline_teasr.evaluation import EvaluationError  # noqa: E402
from pipeline_teasr.model_card import card_from_files, validate_model_card, write_model_card  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval", nargs="*", default=[], metavar="JSON", help="`teasr eval --json` reports")
    parser.add_argument("--out", default="model_card/README.md", help="card file (or a folder for README.md)")
    recipe = parser.add_mutually_exclusive_group()
    recipe.add_argument("--training-recipe", default=None, metavar="FILE", help="Markdown file with the recipe")
    recipe.add_argument("--training-recipe-text", default=None, metavar="TEXT", help="the recipe as text")
    parser.add_argument("--model-name", default="teasr-mini")
    parser.add_argument("--repo-id", default=None, help="Hub id used in the usage snippets")
    parser.add_argument("--base-model", default=None, help="Hub id of the base model (metadata)")
    parser.add_argument("--limitations", default=None, help="an extra limitation to list")
    args = parser.parse_args(argv)
    try:
        card = card_from_files(
            args.eval,
            training_recipe_file=args.training_recipe,
            training_recipe=args.training_recipe_text,
            model_name=args.model_name,
            repo_id=args.repo_id,
            base_model=args.base_model,
            limitations=args.limitations,
        )
        path = write_model_card(card, args.out)
        loaded = validate_model_card(path, expected_results=len(card.data.eval_results or []))
    except (EvaluationError, ValueError, OSError) as error:
        print(f"make_model_card: error: {str(error).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({len(loaded.data.eval_results or [])} model-index results from {len(args.eval)} report(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
