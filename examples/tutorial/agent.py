"""The tutorial's agent, in seed mode: writer and editor answer each other on `conversation_topic`.

    python3 agent.py --host-address "localhost:5000" --agent-name writer_agent \
        --agent-system-message "..." --openai-api-key KEY
    python3 agent.py "localhost:5000" editor_agent "You are an Editor..."
"""

import sys

from roundtable.cli import tutorial_agent

if __name__ == "__main__":
    sys.exit(tutorial_agent())
