from maas.flows.cli import main

main()
