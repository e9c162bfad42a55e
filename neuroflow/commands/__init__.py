"""The command line: `python -m neuroflow fit|validate|test|merge|run` (and the `neuroflow` script).

`cli` is the LightningCLI front door, `trainer` the Trainer whose methods are the subcommands,
`merge` the merge command's steps, `run` the recipe command. Nothing outside this package imports
it, so the pipeline can call the CLI (it is handed `cli.main`) without an import cycle.
"""
