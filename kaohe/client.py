"""The Temporal client every kaohe process uses: pydantic data converter (with payload
encryption, kaohe/codec.py, unless turned off), configured target."""

from __future__ import annotations

import dataclasses

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter

from kaohe.codec import codec_from_settings
from kaohe.settings import Settings


def data_converter(settings: Settings) -> DataConverter:
    """The pydantic data converter plus the payload codec the settings call for.

    Use it for anything that reads or writes payloads outside `connect()`, e.g. a Replayer.
    Decoding passes unencrypted payloads through, so it reads plaintext histories too.
    """
    codec = codec_from_settings(settings)
    if codec is None:
        return pydantic_data_converter
    return dataclasses.replace(pydantic_data_converter, payload_codec=codec)


async def connect(settings: Settings) -> Client:
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=data_converter(settings),
    )
