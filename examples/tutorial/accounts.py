"""The accounts service: opens one account per registered user, exactly once (inbox)."""

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tidings import App
from tidings.sqlalchemy import Inbox


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int]  # not unique: only the inbox keeps a second delivery out
    balance: Mapped[int] = mapped_column(default=0)


class UserRegistered(BaseModel):
    type: str
    userId: int
    username: str


class AccountsService:
    def __init__(self, engine: AsyncEngine, broker: str) -> None:
        self.engine = engine
        self.app = App("accounts", broker=broker)
        inbox = Inbox(engine, consumer="accounts.open-account")

        @self.app.subscriber("users")
        @inbox.idempotent
        async def open_account(event: UserRegistered, session: AsyncSession) -> None:
            session.add(Account(user_id=event.userId))  # commits with the inbox row

    async def count(self) -> int:
        async with AsyncSession(self.engine) as session:
            return await session.scalar(select(func.count()).select_from(Account)) or 0
