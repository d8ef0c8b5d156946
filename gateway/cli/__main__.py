from gateway.cli import app

app()
