"""Lightning's ModelCheckpoint, whose best-checkpoint tracking carries over to a resumed run.

A resumed run writes into its own run directory. Lightning then restores only
`best_model_path` and starts ranking anew: the first checkpoint of the resumed run becomes
the best, however worse it is. Here the earlier run's best checkpoints are copied into the new
`checkpoints/` (the earlier run stays untouched) and the ranking continues with their scores.
"""

import logging
import shutil
from pathlib import Path
from typing import Any

from pytorch_lightning.callbacks import ModelCheckpoint

from vaelab.files import atomic_write

log = logging.getLogger(__name__)


class ResumableModelCheckpoint(ModelCheckpoint):
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        earlier_dir = state_dict.get("dirpath")
        if not earlier_dir or self.dirpath is None or Path(earlier_dir).resolve() == Path(self.dirpath).resolve():
            return super().load_state_dict(state_dict)
        moved: dict[str, str] = {}
        for earlier in state_dict.get("best_k_models", {}):
            if Path(earlier).is_file():
                target = Path(self.dirpath) / Path(earlier).name
                with open(earlier, "rb") as source, atomic_write(target, "wb") as copy:
                    shutil.copyfileobj(source, copy)
                moved[earlier] = str(target)
        log.info("best checkpoints carried over from %s: %s", earlier_dir, ", ".join(Path(p).name for p in moved.values()) or "none")
        state = dict(state_dict, dirpath=self.dirpath, last_model_path="",
                     best_k_models={moved[p]: score for p, score in state_dict.get("best_k_models", {}).items() if p in moved},
                     best_model_path=moved.get(state_dict.get("best_model_path", ""), ""),
                     kth_best_model_path=moved.get(state_dict.get("kth_best_model_path", ""), ""))
        super().load_state_dict(state)
