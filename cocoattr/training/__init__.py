"""Training, in the torchvision-references style: small modules, one loop read top to bottom.

    config.py       the YAML config, validated (pydantic): `load_config`, `config_from_dict`
    data.py         samples per split, preprocessing, seeded augmentation
    cache.py        the frozen-backbone feature cache (`cached_grids`, `GridDataset`)
    model.py        starting model, trainable weights, loss, optimiser, learning-rate schedule
    distributed.py  torchrun / DDP (`Dist`), Ctrl-C handling (`StopFlag`)
    state.py        `TrainState`, saved to and resumed from RUN_DIR/last; RNG state
    report.py       history.json, plots, report.md
    loop.py         `fit(cfg, run_dir)`: `train_one_epoch`, `evaluate`, the end of a run

`python -m cocoattr train --config FILE --out RUN_DIR` (cocoattr.cli) and train/train.py call
`load_config` and `fit`; train/README.md describes the config keys and the run folder.
"""
