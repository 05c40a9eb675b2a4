"""``python -m kelpseg.cli``."""

from kelpseg.cli import main

if __name__ == "__main__":
    main()
