"""The run's CSV log, kept whole when the run resumes.

Lightning's CSVLogger deletes ``metrics.csv`` when its folder already holds files, which is every resume here
(``ckpt_path=auto`` reruns in the same folder): a resumed run's CSV began at the resumed step and the earlier
epochs' metrics were gone. This one, given the checkpoint the run resumes from, keeps the earlier rows and appends;
the rows the interrupted run logged past that checkpoint, which the resumed run logs again, are dropped. A run that
starts afresh in a folder with a log moves the old one to ``metrics.previous.csv`` instead of deleting it."""

from __future__ import annotations

import csv
import os

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment


class AppendingExperimentWriter(ExperimentWriter):
    def __init__(self, log_dir: str, resuming: bool) -> None:
        self.resuming = resuming
        self._first_save = True
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        """Keep an existing ``metrics.csv`` (resuming: take its header, so appended rows line up; afresh: aside)."""
        if not self._fs.isfile(self.metrics_file_path):
            return
        if not self.resuming:
            os.replace(self.metrics_file_path, os.path.join(self.log_dir, "metrics.previous.csv"))
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            self.metrics_keys = list(next(csv.reader(file), []))

    def save(self) -> None:
        if self._first_save and self.resuming and self.metrics and self._fs.isfile(self.metrics_file_path):
            # the interrupted run's rows from the resumed step on are logged again by this run: drop them
            first = min(int(m["step"]) for m in self.metrics)
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                rows = [r for r in csv.DictReader(file) if not r.get("step") or int(float(r["step"])) < first]
            with self._fs.open(self.metrics_file_path, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(rows)
        self._first_save = False
        super().save()


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger whose ``metrics.csv`` survives a resume (see the module docstring). ``resume_from``:
    the checkpoint the run resumes from (``ckpt_path`` once resolved), None for a fresh run."""

    def __init__(self, *args: object, resume_from: str | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.resuming = bool(resume_from)

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir, resuming=self.resuming)
        return self._experiment
