"""`TaskSpec`: everything neuroflow needs to know about one task, written as YAML.

A spec is pure data: where the examples come from (`source`), which columns hold the input and the
label, what the labels are called, which splits exist or must be made, caps, and metrics. Loading
lives in `neuroflow.data.loading`; finding a spec by name lives in `neuroflow.data.registry`. The
fields of the causal-LM kinds (`instruction`, `multiple_choice`, `generation`) are checked in
`neuroflow.data.llm_spec`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from neuroflow.data.llm_spec import LLM_KINDS, default_metrics, metric_key, validate_llm_fields

TaskKind = Literal[
    "text_classification", "text2text", "image_classification", "instruction", "multiple_choice", "generation"
]
TASK_KINDS: tuple[str, ...] = ("text_classification", "text2text", "image_classification", *LLM_KINDS)
SPLITS: tuple[str, ...] = ("train", "validation", "test")
METRICS: tuple[str, ...] = ("accuracy", "f1", "f1_macro", "mcc")
LABEL_FORMATS: tuple[str, ...] = ("auto", "index", "name")
# Task names become folder names (experts, caches) and metric keys: no path tricks.
TASK_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


@dataclass
class TaskSpec:
    """One task: its data source, columns, labels, splits, caps and metrics.

    Args:
        name: unique task name; used in batches (`batch["task"]`), metric keys and expert folders.
        kind: `text_classification` (encoder + a head per task), `text2text` (seq2seq, labels
            verbalized as target strings), `image_classification`, or a causal-LM kind:
            `instruction` (prompt -> target, loss on the target tokens), `multiple_choice`
            (log-likelihood of each choice given the prompt) or `generation` (greedy decoding
            scored by `exact_match` / `numeric_match`).
        source: where the examples come from. `path` is a neuroflow reader (`label_text_lines`,
            `parallel_lines`, `delimited`, `idx_images`, `dense_rows`, `onehot_rows`, `mat_cells`,
            or the class path of a `neuroflow.data.readers.Reader` subclass), a `datasets` builder
            (`csv`, `json`, `text`, `parquet`, ...) or a Hugging Face hub id. `data_files` (a path,
            or our-split-name -> path) is resolved against the data directory for readers and local
            builders. Every other key is passed to the reader or to `datasets.load_dataset`.
        label_names: class names, in label-index order.
        text_column: the input text column; a list joins several columns with a space (e.g. a
            title and a description). Required for text tasks.
        text_pair_column: optional second text (sentence-pair tasks).
        image_column: the image column (image tasks).
        label_column: the label column.
        label_format: how source labels map to indices: `index` (integers, minus `label_offset`),
            `name` (looked up in `label_names`), or `auto` (names when they match a label name,
            integers otherwise).
        label_offset: subtracted from integer labels (e.g. 1 for classes numbered 1..K).
        splits: our split (`train`/`validation`/`test`) -> the source's split name. Splits not
            listed are carved out of `split_from` with `split_fractions` (seeded, stratified).
        split_from: our split whose examples are divided to make the missing splits.
        split_fractions: fraction of the `split_from` pool given to each missing split.
        split_seed: seed of the made splits and of the capped subsets (fixed per task, so every run
            and every expert sees the same validation and test examples).
        max_examples: cap per split (`{train: N, validation: N, test: N}`), applied after the
            splits are made, to a seeded stratified subset.
        metrics: metric names, the first is the primary one: `accuracy`, `f1` (binary F1 of
            label index 1), `f1_macro`, `mcc` (Matthews correlation) for classification kinds;
            `acc`, `acc_norm` for `multiple_choice`; `exact_match`, `numeric_match` or the class
            path of a scorer for `instruction`/`generation`. None = the kind's default.
        verbalizer: target strings for text2text, one per label (defaults to `label_names`);
            kept on classification tasks for when they run as text2text (`as_text2text`).
        input_template: text2text (or classification) input format, e.g.
            `"sst2 sentence: {text}"`; fields `{text}` and `{text_pair}`.
        description: one line for humans (docs, reports).
        prompt_template: causal-LM kinds: the prompt, with `{column}` fields naming source columns,
            e.g. `"Review: {text}\nSentiment:"`.
        target_column: `instruction`/`generation`: the column holding the answer; None = the
            verbalized label (`verbalizer`, else `label_names`, indexed by `label_column`).
        target_delimiter: text between the prompt and the target or each choice (lm-eval's " ").
        choices: `multiple_choice`: the columns holding the choices (the label then indexes
            them); None = every row chooses among the verbalizer (else the label names).
        max_new_tokens: `instruction`/`generation`: greedy decoding length at evaluation.
        stop: `instruction`/`generation`: strings that end a generated answer (cut there).
        packing: causal-LM kinds: pack several training examples into each row of up to
            `max_length` tokens (fewer padding tokens; examples in one row can attend to earlier
            ones, as in plain concatenation packing).
    """

    name: str
    kind: TaskKind = "text_classification"
    source: dict[str, Any] = field(default_factory=dict)
    label_names: list[str] = field(default_factory=list)
    text_column: str | list[str] | None = None
    text_pair_column: str | None = None
    image_column: str | None = None
    label_column: str = "label"
    label_format: Literal["auto", "index", "name"] = "auto"
    label_offset: int = 0
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train"})
    split_from: str = "train"
    split_fractions: dict[str, float] = field(
        default_factory=lambda: {"validation": 0.1, "test": 0.1}
    )
    split_seed: int = 42
    max_examples: dict[str, int] = field(default_factory=dict)
    metrics: list[str] | None = None
    verbalizer: list[str] | None = None
    input_template: str | None = None
    description: str = ""
    prompt_template: str | None = None
    target_column: str | None = None
    target_delimiter: str = " "
    choices: list[str] | None = None
    max_new_tokens: int = 32
    stop: list[str] = field(default_factory=list)
    packing: bool = False

    def __post_init__(self) -> None:
        if self.metrics is None:
            self.metrics = default_metrics(self.kind)
        if self.kind == "multiple_choice" and self.choices and not self.label_names:
            # Column choices: the label indexes them (or names the column).
            self.label_names = list(self.choices)
        self.validate()

    @property
    def is_llm(self) -> bool:
        """Whether this is a causal-LM kind (`instruction`, `multiple_choice`, `generation`)."""
        return self.kind in LLM_KINDS

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def metric_keys(self) -> list[str]:
        """The names metrics are logged under (a scorer class path logs as its class name)."""
        return [metric_key(m) for m in self.metrics]

    @property
    def primary_metric(self) -> str:
        return self.metric_keys[0]

    @property
    def text_columns(self) -> list[str]:
        """The input text column(s) as a list (empty for image tasks)."""
        if self.text_column is None:
            return []
        return [self.text_column] if isinstance(self.text_column, str) else list(self.text_column)

    @property
    def targets(self) -> list[str]:
        """Target strings of text2text tasks: the verbalizer, else the label names."""
        return list(self.verbalizer) if self.verbalizer else list(self.label_names)

    @property
    def choice_texts(self) -> list[str] | None:
        """`multiple_choice` over the verbalizer: the choices every row shares; else None."""
        if self.kind != "multiple_choice" or self.choices:
            return None
        return self.targets

    @property
    def uses_label(self) -> bool:
        """Whether the task reads `label_column` (classification, choices, verbalized targets)."""
        return not self.is_llm or self.kind == "multiple_choice" or self.target_column is None

    def missing_splits(self) -> list[str]:
        """Our splits that the source does not provide, in `SPLITS` order."""
        return [s for s in SPLITS if s not in self.splits]

    def validate(self) -> None:
        """Check the spec's internal consistency (no file access).

        Raises:
            ValueError: names the task and the offending field.
        """
        where = f"task {self.name!r}"
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"task spec: `name` must be a non-empty string, got {self.name!r}")
        if not TASK_NAME.match(self.name) or ".." in self.name:
            raise ValueError(
                f"{where}: `name` must be a safe identifier (letters, digits and `_`, then also `.`, `+`, "
                f"`-`; no `/` and no `..`), because it names folders and metric keys"
            )
        if self.kind not in TASK_KINDS:
            raise ValueError(f"{where}: kind {self.kind!r} is not one of {list(TASK_KINDS)}")
        if not isinstance(self.source, dict) or not self.source.get("path"):
            raise ValueError(f"{where}: `source.path` is required (a reader, a datasets builder or a hub id)")
        if self.is_llm:
            self._validate_common()
            validate_llm_fields(self)
            return
        if len(self.label_names) < 2:
            raise ValueError(f"{where}: `label_names` needs at least 2 classes, got {self.label_names!r}")
        if len(set(map(str, self.label_names))) != len(self.label_names):
            raise ValueError(f"{where}: `label_names` has duplicates: {self.label_names!r}")
        if self.kind == "image_classification":
            if not self.image_column:
                raise ValueError(f"{where}: image tasks need `image_column`")
        elif not self.text_columns:
            raise ValueError(f"{where}: {self.kind} tasks need `text_column`")
        if self.prompt_template is not None or self.target_column is not None or self.choices is not None:
            raise ValueError(
                f"{where}: `prompt_template`, `target_column` and `choices` belong to the causal-LM kinds "
                f"(instruction, multiple_choice, generation), not to {self.kind}"
            )
        if self.packing:
            raise ValueError(f"{where}: `packing` only applies to the causal-LM kinds, not to {self.kind}")
        self._validate_common()
        if not self.metrics:
            raise ValueError(f"{where}: `metrics` is empty; give at least one of {list(METRICS)}")
        bad = [m for m in self.metrics if m not in METRICS]
        if bad:
            raise ValueError(f"{where}: unknown metrics {bad}; known: {list(METRICS)}")
        if "f1" in self.metrics and self.num_labels != 2:
            raise ValueError(f"{where}: metric `f1` is binary; use `f1_macro` for {self.num_labels} classes")
        if self.verbalizer is not None:
            if self.kind == "image_classification":
                raise ValueError(f"{where}: `verbalizer` only applies to text tasks")
            if len(self.verbalizer) != self.num_labels:
                raise ValueError(
                    f"{where}: `verbalizer` has {len(self.verbalizer)} entries for {self.num_labels} labels"
                )
        if self.input_template is not None:
            if "{text}" not in self.input_template:
                raise ValueError(f"{where}: `input_template` must contain '{{text}}': {self.input_template!r}")
            if "{text_pair}" in self.input_template and not self.text_pair_column:
                raise ValueError(f"{where}: `input_template` uses {{text_pair}} but `text_pair_column` is not set")
            try:
                self.input_template.format(text="", text_pair="")
            except (KeyError, IndexError, ValueError) as err:
                raise ValueError(
                    f"{where}: `input_template` {self.input_template!r} may only use the fields "
                    f"{{text}} and {{text_pair}} (write literal braces as {{{{ }}}}): {err!r}"
                ) from err

    def _validate_common(self) -> None:
        """Labels format, splits and caps: the same for every kind."""
        where = f"task {self.name!r}"
        if self.label_format not in LABEL_FORMATS:
            raise ValueError(f"{where}: label_format {self.label_format!r} is not one of {list(LABEL_FORMATS)}")
        unknown = [s for s in self.splits if s not in SPLITS]
        if unknown:
            raise ValueError(f"{where}: `splits` keys {unknown} are not among {list(SPLITS)}")
        missing = self.missing_splits()
        if missing:
            if self.split_from not in self.splits:
                raise ValueError(
                    f"{where}: splits {missing} must be made from `split_from` {self.split_from!r}, "
                    f"which is not in `splits` {self.splits}"
                )
            no_fraction = [s for s in missing if s not in self.split_fractions]
            if no_fraction:
                raise ValueError(f"{where}: missing splits {no_fraction} have no `split_fractions` entry")
            fracs = [float(self.split_fractions[s]) for s in missing]
            if any(f <= 0 for f in fracs) or sum(fracs) >= 1:
                raise ValueError(
                    f"{where}: `split_fractions` for {missing} must be > 0 and sum below 1, got "
                    f"{ {s: self.split_fractions[s] for s in missing} }"
                )
        if "train" not in self.splits:
            raise ValueError(f"{where}: `splits` must name the source split used for `train`")
        bad_caps = {k: v for k, v in self.max_examples.items() if k not in SPLITS or int(v) < 1}
        if bad_caps:
            raise ValueError(f"{where}: `max_examples` {bad_caps}: keys must be {list(SPLITS)}, values >= 1")

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-serializable dict (what `expert.json` stores)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "task spec") -> TaskSpec:
        """Build a spec from a dict (a parsed YAML file), refusing unknown keys.

        Args:
            data: the fields.
            origin: where the dict came from (a file name), for error messages.

        Raises:
            ValueError: unknown keys or an invalid field, naming `origin`.
        """
        if not isinstance(data, dict):
            raise ValueError(f"{origin}: a task spec must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{origin}: unknown task spec keys {unknown}; known keys: {sorted(known)}")
        if "name" not in data:
            raise ValueError(f"{origin}: the task spec has no `name`")
        try:
            return cls(**data)
        except ValueError as err:
            raise ValueError(f"{origin}: {err}") from err
