"""``python -m lightning_stiffness.bench``."""

from lightning_stiffness.bench import main

__all__: list[str] = []

if __name__ == "__main__":
    main()
