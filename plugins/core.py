"""The core's own Hydra configs (config.yaml and the groups), registered like any plugin's."""
from pathlib import Path

import stimopt


@stimopt.hookimpl
def register_config_dirs(register):
    import stimopt_conf

    register(str(Path(stimopt_conf.__file__).parent))
