"""`python -m orgrunner`: the same command as `orgrunner`."""

from orgrunner.cli.app import main

if __name__ == "__main__":
    main()
