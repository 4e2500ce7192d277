"""LangChain: a chat model over a Guard."""

from guardrail.integrations.langchain.chat_model import GuardedChatModel

__all__ = ["GuardedChatModel"]
