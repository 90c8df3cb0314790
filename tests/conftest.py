# The fake LM Studio (tests/fakes/lmstudio.py) and an isolated model cache for every test.
from fakes.fixtures import (  # noqa: F401
    fake_lmstudio,
    isolated_lmflow_env,
    make_fake_lmstudio,
)

# Real MCP servers for integration tests: see tests/mcp_support.py.
from mcp_support import (  # noqa: F401
    filesystem_server_js,
    http_fixture_url,
    memory_server_js,
    node_modules,
)
