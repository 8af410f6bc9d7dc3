"""``python -m l0tre_cli``: the same as the ``l0tre`` command."""

from l0tre_cli.app import main

if __name__ == "__main__":
    main()
