import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from treebuild import Tree  # noqa: E402


@pytest.fixture
def tree(tmp_path):
    return Tree(tmp_path)
