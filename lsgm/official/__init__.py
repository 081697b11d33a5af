"""The NVlabs/LSGM official checkpoints: ``keymap`` (their state_dict keys <-> ours, key by key, with each rule's
inverse), ``importer`` (``lsgm import-official``: a checkpoint -> ``model.pt``) and ``writer`` (``lsgm make-release``:
official-format checkpoints at miniature sizes, for tests)."""
