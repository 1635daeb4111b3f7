"""The users service: a user row and its USER_REGISTERED event commit together (outbox)."""

from sqlalchemy import String
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tidings import App
from tidings.sqlalchemy import Outbox


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


class UsersService:
    def __init__(self, engine: AsyncEngine, broker: str) -> None:
        self.app = App("users", broker=broker)
        self.outbox = Outbox(engine)
        self.outbox.relay(self.app)  # publishes recorded events while the app runs
        self.sessions = async_sessionmaker(engine)

    async def register(self, name: str) -> int:
        async with self.sessions() as session, session.begin():
            user = User(name=name)
            session.add(user)
            await session.flush()  # the id is allocated inside this transaction
            event = {"type": "USER_REGISTERED", "userId": user.id, "username": name}
            await self.outbox.publish(session, "users", event, key=f"user-{user.id}")
            user_id = user.id
        return user_id  # the row and the event committed together, or neither
