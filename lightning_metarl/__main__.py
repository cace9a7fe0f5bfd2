"""``python -m lightning_metarl {fit,validate,test}``."""

from lightning_metarl.cli import main

if __name__ == "__main__":
    main()
