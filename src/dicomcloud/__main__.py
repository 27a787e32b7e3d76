"""`python -m dicomcloud` is the `dicomcloud` command."""

from dicomcloud.cli import main

main()
