from pydantic import BaseModel

from tidings import App, Message, RetryPolicy


class UserRegistered(BaseModel):
    type: str
    userId: int
    username: str


app = App("notifications")  # broker: $TIDINGS_BROKER, else sqlite:///.tidings/bus.db


@app.subscriber("users", concurrency=8, retry=RetryPolicy(max_attempts=5))
async def on_user(event: UserRegistered, message: Message) -> None:
    print(f"Received registration event for user {event.userId} ({event.username})")


@app.responder("greet")
async def greet(body: dict) -> dict:
    return {"hello": body["name"]}


if __name__ == "__main__":
    app.run()  # or: tidings run notifications:app
