"""What the tests share: paths, running commands, a tiny model, conditions (``RunIf``), the
per-sample attention reference and the scripts the multi-process tests start."""
