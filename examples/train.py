"""Train one of the paper's experiments with StiffnessCallback, configured by YAML (LightningCLI).

    python examples/train.py fit --config examples/configs/mnist_fc_v1.yaml
    python examples/train.py fit --config examples/configs/mnist_fc_v1.yaml --model.init_args.lr 3e-4 \\
        --trainer.max_epochs 20 --data.init_args.download true
    tensorboard --logdir runs

Every config picks its LightningModule and LightningDataModule by ``class_path`` (see
``lightning_stiffness.experiments``); ``python examples/train.py fit --help`` lists the options,
``--print_config`` prints the resolved config.
"""

from lightning_stiffness.experiments.cli import main

if __name__ == "__main__":
    main()
