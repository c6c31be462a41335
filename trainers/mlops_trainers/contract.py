"""The contract between the trainers, the workflow renderer and the operator, written once.

TensorFlow-free (pydantic only), so the operator image imports it: exit codes, the names of the
files a run leaves under its output, the summary a trainer hands back through Argo's output
parameter, and the shape of run ids. A change here is a change of the protocol between a
trainer image and an operator: keep old readers working (the summary ignores unknown keys).
"""

from __future__ import annotations

import json
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "ATTEMPTS_FILE",
    "EXIT_APP_ERROR",
    "EXIT_FATAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PREEMPTED",
    "LOGS_DIR",
    "METRICS_FILE",
    "METRICS_PLOT",
    "MODEL_FILE",
    "PLACEMENT_ENV",
    "RUN_FILE",
    "STATUS_FILE",
    "SUMMARY_ENV",
    "SUMMARY_PARAMETER",
    "SUMMARY_PATH",
    "TB_DIR",
    "RunId",
    "Summary",
    "attempt_log",
    "format_run_id",
    "parse_run_id",
]

# === Exit codes of `python -m mlops_trainers` ===

EXIT_OK = 0
EXIT_APP_ERROR = 1  # the trainer failed; its app-error budget (error_retries) is not spent
EXIT_FATAL = 2  # bad config or data, or the app-error budget is spent: never retried
EXIT_INTERRUPTED = 130  # 128 + SIGINT: Ctrl-C locally; a checkpoint was written
EXIT_PREEMPTED = 143  # 128 + SIGTERM: a checkpoint was written; a retry resumes from it

# === Files under a run's output URL (<output prefix>/<run id>/) ===

RUN_FILE = "run.json"  # provenance: config, image, parent/resume source, final metrics
STATUS_FILE = "status.json"  # where training is, rewritten at each checkpoint
METRICS_FILE = "metrics.csv"  # one row per epoch
METRICS_PLOT = "metrics.png"  # the curves of metrics.csv
ATTEMPTS_FILE = "attempts.json"  # attempts and app errors, across pods
MODEL_FILE = "model.keras"  # the final model
TB_DIR = "tb"  # TensorBoard event files
LOGS_DIR = "logs"  # the trainer's log, one file per attempt


def attempt_log(attempt: int) -> str:
    """The log of attempt ``attempt`` (1-based, as counted in attempts.json), under the output."""
    return f"{LOGS_DIR}/attempt-{attempt}.log"


# === The summary: the trainer's last word, read back by the operator ===

SUMMARY_ENV = "MLOPS_SUMMARY_FILE"  # where the trainer writes it (a path in the pod)
SUMMARY_PATH = "/tmp/mlops/summary.json"  # the path the rendered Workflow sets
SUMMARY_PARAMETER = "summary"  # the name of the Argo output parameter carrying it
# Where this attempt trains ("spot" or "on-demand"), set by the Workflow; run.json records it.
PLACEMENT_ENV = "MLOPS_PLACEMENT"


class Summary(BaseModel):
    """What a trainer reports when it ends (succeeded, preempted or failed)."""

    # extra=ignore: a newer trainer may add keys an older operator does not know.
    model_config = ConfigDict(extra="ignore", frozen=True)

    state: Literal["running", "succeeded", "preempted", "failed"]
    run_id: str | None = None
    latest_checkpoint: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    epoch: int = 0
    step: int = 0
    error: str | None = None
    # This run's attempt number (attempts.json: across pods and Workflows), so the operator
    # sees attempts Argo has no node for (views.unseen_attempts).
    attempt: int = 0
    # The run's steps in all (0: not known yet, or an older trainer). With ``step``, the exact
    # progress of an ended attempt: Argo samples the progress file every few seconds and stops
    # at the container's exit, so a short attempt's last steps never reach it.
    total_steps: int = 0

    @property
    def progress(self) -> str | None:
        """``"step/total_steps"`` when the trainer said both (Argo's progress format)."""
        if self.total_steps <= 0:
            return None
        return f"{min(self.step, self.total_steps)}/{self.total_steps}"

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    @classmethod
    def parse(cls, text: str | None) -> Summary | None:
        """The summary in ``text``, or None when it is empty or not a summary (never raises)."""
        if not text:
            return None
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return None
        if not isinstance(data, dict) or "state" not in data:
            return None
        # Drop metrics that are not numbers rather than refusing the whole summary.
        if isinstance(data.get("metrics"), dict):
            data["metrics"] = {
                str(k): float(v)
                for k, v in data["metrics"].items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            }
        try:
            return cls.model_validate(data)
        except ValidationError:
            return None


# === Run ids ===

# A DNS label and a label value hold 63 characters; a run's Workflows are named <run id> and,
# after a suspend and resume, <run id>-r<N>, so run ids keep 5 characters for that suffix.
RUN_ID_MAX = 58
_RUN_ID = re.compile(
    r"^(?P<stem>[a-z0-9]([-a-z0-9]*[a-z0-9])?)-g(?P<generation>\d+)-(?P<digest>[0-9a-f]{8})$"
)


class RunId(BaseModel):
    """The parts of ``<stem>-g<generation>-<digest>``."""

    model_config = ConfigDict(frozen=True)

    stem: str
    generation: int
    digest: str


def format_run_id(name: str, generation: int, digest: str) -> str:
    """``<stem>-g<generation>-<digest>``: the name made a DNS label and shortened so the whole
    fits 63 characters. The stem is for people; the digest is what makes the id unique."""
    suffix = f"-g{generation}-{digest}"
    stem = re.sub(r"[^a-z0-9-]", "-", name.lower())[: RUN_ID_MAX - len(suffix)].strip("-")
    return f"{stem or 'run'}{suffix}"


def parse_run_id(value: str) -> RunId | None:
    """The parts of a run id, or None when ``value`` is not one."""
    match = _RUN_ID.match(value)
    if match is None:
        return None
    return RunId(
        stem=match.group("stem"),
        generation=int(match.group("generation")),
        digest=match.group("digest"),
    )
