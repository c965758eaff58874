"""``python -m qnet``: the ``qnet`` command line."""

from qnet.cli import main

if __name__ == "__main__":
    main()
