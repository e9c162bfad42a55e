"""The merged model's `README.md` (a Hugging Face model card) and `merge_card.json`.

The card's YAML front matter is what the hub indexes (`base_model`, `library_name: transformers`,
`tags: [neuroflow, merge, <method>]`); the body says how the model was made: method and
hyperparameters, the experts with their fingerprints and revisions, the exact command and config,
and the neuroflow version, so the merge can be reproduced.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any


def neuroflow_version() -> str:
    """The installed neuroflow version ("unknown" when not installed)."""
    try:
        return metadata.version("neuroflow")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_merge_card(**fields: Any) -> dict[str, Any]:
    """The JSON-ready merge card: the given fields plus the version and a UTC timestamp."""
    return {**fields, "neuroflow_version": neuroflow_version(), "created_at": datetime.now(timezone.utc).isoformat()}


def _expert_line(expert: dict[str, Any]) -> str:
    facts = [f"`{expert['kind']}`"]
    if expert.get("revision"):
        facts.append(f"revision `{expert['revision']}`")
    if expert.get("fingerprint"):
        facts.append(f"fingerprint `{expert['fingerprint']}`")
    return f"- `{expert['name']}` ({', '.join(facts)})"


def render_model_card(card: dict[str, Any]) -> str:
    """The `README.md` text (front matter + body) for a merge card from `build_merge_card`.

    Args:
        card: the merge card.
    """
    from huggingface_hub import ModelCard, ModelCardData

    method = card["merge"]["method"]
    data = ModelCardData(base_model=card["base_model"]["name"], library_name="transformers",
                         tags=["neuroflow", "merge", method])
    hparams = "\n".join(f"| `{k}` | `{v}` |" for k, v in card["merge"]["hparams"].items()) or "| (none) | |"
    experts = "\n".join(_expert_line(e) for e in card["experts"])
    notes = "\n".join(f"- {w}" for w in card.get("warnings", [])) or "- none"
    vocab = card.get("vocab")
    vocab_text = (f"Vocabulary: `shared_rows`: the base's {vocab['base_rows']} rows were merged; rows "
                  f"{vocab['base_rows']}..{vocab['output_rows'] - 1} of {', '.join(vocab['tensors'])} are "
                  f"`{vocab['extra_rows_from']}`'s own (the tokens it added).\n\n" if vocab else "")
    body = f"""
# {Path(card['output_dir']).name}

A merge of {len(card['experts'])} experts into `{card['base_model']['name']}` with **{method}**
(`{card['merge']['class_path']}`), made by [neuroflow](https://pypi.org/project/neuroflow/)
{card['neuroflow_version']}.

## Method

| hyperparameter | value |
|---|---|
{hparams}

Statistics: `{json.dumps(card['merge'].get('statistics', {}), default=str)[:2000]}`

Output dtype: `{card['dtype']}`; {card['shards']} shard(s).

{vocab_text}## Experts

{experts}

Base: `{card['base_model']['name']}` (fingerprint `{card['base_model'].get('fingerprint')}`).

## Notes

{notes}

## Reproduce

```bash
{card.get('command') or '(called from Python)'}
```

```json
{json.dumps(card.get('config', {}), indent=2, default=str)}
```
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}").content


def write_cards(folder: Path, card: dict[str, Any]) -> None:
    """Write `merge_card.json` and `README.md` into `folder`.

    Args:
        folder: the (temporary) output folder.
        card: the merge card.
    """
    (folder / "merge_card.json").write_text(json.dumps(card, indent=2, default=str) + "\n", encoding="utf-8")
    (folder / "README.md").write_text(render_model_card(card), encoding="utf-8")
