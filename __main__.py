"""Entry point of the Pulumi project `inferstack`; the program lives in inferstack.components.program."""

from inferstack.components.program import main

main()
