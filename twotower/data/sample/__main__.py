"""``python -m twotower.data.sample``: see `twotower.data.sample.cli`."""

from twotower.data.sample.cli import main

if __name__ == "__main__":
    main()
