// The examples to pick from. `needs` names a jail package the example imports that the
// default image does not have: the page lists it only when the service has it.

export const EXAMPLES = [
  {
    name: "Hello",
    script: `def main():
    print("hello from the sandbox")
    return {"greeting": "hello", "answer": 42}
`,
  },
  {
    name: "A pandas table",
    script: `import pandas as pd


def main():
    df = pd.DataFrame({"city": ["Lyon", "Oslo", "Lima"], "temp_c": [14.5, 3.0, 19.2]})
    df["temp_f"] = df["temp_c"] * 9 / 5 + 32
    print(df.describe())
    return df.to_dict(orient="records")
`,
  },
  {
    name: "Input and stdin",
    script: `import sys


def main(input):
    names = [line.strip() for line in sys.stdin if line.strip()]
    return [{"name": name, "greeting": f"{input['greeting']}, {name}!"} for name in names]
`,
    input: `{"greeting": "Hello"}`,
    stdin: "Ada\nGrace\n",
  },
  {
    name: "Files in and out",
    script: `import csv
import os


def main():
    found = sorted(name for name in os.listdir(".") if os.path.isfile(name))
    with open("out/squares.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["n", "square"])
        writer.writerows((n, n * n) for n in range(10))
    return {"files_given": found, "wrote": "out/squares.csv"}
`,
  },
  {
    name: "An error",
    script: `def mean(values):
    return sum(values) / len(values)


def main():
    return mean([])
`,
  },
  {
    name: "A timeout",
    script: `import time


def main():
    while True:
        time.sleep(0.1)
`,
    timeout: "2",
  },
  {
    name: "A plot (matplotlib)",
    needs: "matplotlib",
    script: `import matplotlib.pyplot as plt


def main():
    xs = list(range(20))
    plt.plot(xs, [x * x for x in xs], marker="o")
    plt.title("Squares")
    plt.savefig("out/plot.png", dpi=80)
    return "saved out/plot.png"
`,
    timeout: "20",  // the first import of matplotlib in a fresh jail takes a few seconds
  },
];

/** A script that answers which of `names` the jail can import (one small run, at load). */
export function probeScript(names) {
  return `import importlib.util


def main():
    return {name: importlib.util.find_spec(name) is not None for name in ${JSON.stringify(names)}}
`;
}
