from consortium.cli.main import app

app(prog_name="consortium")
