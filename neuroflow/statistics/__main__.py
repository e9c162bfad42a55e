"""`python -m neuroflow.statistics ...`: the same as `python -m neuroflow stats ...`."""

from neuroflow.statistics.command import main

if __name__ == "__main__":
    main()
