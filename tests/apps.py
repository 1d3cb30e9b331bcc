"""Source of small apps that tests write to files (the CLI loads apps from files).

``PIPELINE``: writer -> editor -> publisher; ``{approval}`` becomes ``editor.needs_approval()`` or
nothing, ``{name}`` the app's name; the App is the module global ``pipeline``.
"""

PIPELINE = '''
from pydantic import BaseModel
from roost import App, agent


class Topic(BaseModel):
    title: str


class Draft(BaseModel):
    text: str


class Final(BaseModel):
    text: str
    words: int


def write(t: Topic) -> Draft:
    return Draft(text=f"about {t.title}")


def edit(d: Draft) -> Draft:
    return Draft(text=d.text.upper())


def publish(d: Draft) -> Final:
    return Final(text=d.text, words=len(d.text.split()))


writer = agent("writer").contracts(input=Topic, output=Draft).engine(write)
editor = agent("editor").contracts(input=Draft, output=Draft).engine(edit).reacts_to(writer)
publisher = agent("publisher").contracts(input=Draft, output=Final).engine(publish).reacts_to(editor)
{approval}
pipeline = App([writer, editor, publisher], name="{name}")

if __name__ == "__main__":
    raise SystemExit("imported as __main__")
'''


def pipeline_source(name: str, *, approval: bool) -> str:
    return PIPELINE.replace("{approval}", "editor.needs_approval()" if approval else "").replace("{name}", name)
