"""Task models. Installed as ``pp_aif.tasks``; each module has ``build() -> pp_aif.task.Task``."""
