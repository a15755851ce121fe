from setuptools import find_packages, setup

setup(
    name="zmqstore",
    version="0.1.0",
    description="A replicated key-value store over ZeroMQ with RocksDB storage",
    packages=find_packages(include=["zmqstore", "zmqstore.*"]),
    python_requires=">=3.11",
    install_requires=[
        "pyzmq>=25",
        "msgpack>=1.0",
        "rocksdict>=0.3.20",
        "docopt-ng>=0.9",
        "prometheus-client>=0.17",
        "rich>=13",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-timeout>=2", "hypothesis>=6"],
        # make bench-compare: the clients of the stores compared, percentiles, and the profiler
        "bench": ["redis[hiredis]>=5", "grpcio>=1.60", "hdrhistogram>=0.10", "py-spy>=0.3"],
    },
    entry_points={
        "console_scripts": [
            "datastore-node=zmqstore.cli:node_entry",
            "datastore-cli=zmqstore.cli:cli_entry",
        ],
    },
    scripts=[],
)
