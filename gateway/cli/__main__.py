from gateway.cli import app

if __name__ == "__main__":  # not again in a spawned worker (gateway/cli/workers.py)
    app()
