from maas.flows.cli import app

app()
