from pydantic import BaseModel


class Idea(BaseModel):
    topic: str


class Draft(BaseModel):
    title: str
    body: str


class Review(BaseModel):
    score: int
    notes: str


class Verdict(BaseModel):
    publish: bool
    title: str


class Count(BaseModel):
    n: int


class Item(BaseModel):
    name: str


class Done(BaseModel):
    value: str
