"""ASHA whose rungs survive a restart of the sweep's driver.

Tune restores an interrupted experiment's trials but builds its scheduler afresh from the pickled
config: the rungs' recorded metrics would be gone, and after `llmlab sweep --resume` the remaining
trials would only be compared with each other. This scheduler writes its state after every result
it decides on and reads it back at its first decision after a restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler


class ResumableASHA(ASHAScheduler):
    def __init__(self, state_path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._state_path = state_path
        self._state_checked = False

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if not self._state_checked:
            self._state_checked = True
            if Path(self._state_path).exists():
                self._restore_keeping_new_trials()
        decision = super().on_trial_result(tune_controller, trial, result)
        Path(self._state_path).parent.mkdir(parents=True, exist_ok=True)
        self.save(self._state_path)
        return decision

    def _restore_keeping_new_trials(self) -> None:
        # ASHA's own restore replaces its whole state (a pickled __dict__); trials Tune added since
        # the restart are put back, each into the restored bracket of the same index.
        added, brackets = dict(self._trial_info), list(self._brackets)
        self.restore(self._state_path)
        for trial_id, bracket in added.items():
            self._trial_info.setdefault(trial_id, self._brackets[brackets.index(bracket)])
