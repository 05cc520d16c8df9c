"""A real agent framework (the OpenAI Agents SDK) drives the server through a complete tool
loop with the embedded SmolLM2: the model calls the tool (forced on the first turn, so the
small model cannot skip it), the framework runs it and sends the result back, and the model's
next turn is the final answer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

agents = pytest.importorskip("agents")

pytestmark = pytest.mark.timeout(600)

MODEL = "SmolLM2-135M-Instruct"


def test_openai_agents_sdk_tool_loop(smol_server: Any) -> None:
    from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled
    from openai import AsyncOpenAI

    set_tracing_disabled(True)  # traces would be sent to api.openai.com
    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        calls.append(city)
        return f"The weather in {city} is sunny and 22 degrees celsius."

    async def run() -> Any:
        client = AsyncOpenAI(base_url=f"{smol_server.base_url}/v1", api_key="unused", max_retries=0)
        agent = Agent(
            name="weather",
            instructions="You answer questions about the weather using the get_weather tool.",
            tools=[get_weather],
            model=OpenAIChatCompletionsModel(model=MODEL, openai_client=client),
            # Forced on the first turn; the SDK resets tool_choice after a call (reset_tool_choice).
            model_settings=ModelSettings(tool_choice="get_weather", temperature=0, max_tokens=60),
        )
        try:
            return await Runner.run(agent, "What is the weather in Paris?", max_turns=4)
        finally:
            await client.close()

    result = asyncio.run(run())
    assert calls == ["Paris"]
    kinds = [item.type for item in result.new_items]
    assert kinds[:2] == ["tool_call_item", "tool_call_output_item"], kinds
    assert kinds[-1] == "message_output_item", kinds
    assert isinstance(result.final_output, str) and result.final_output.strip()
