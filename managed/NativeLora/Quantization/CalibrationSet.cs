using NativeLora.Data;
using NativeLora.Text;

namespace NativeLora.Quantization;

/// <summary>
/// Calibration sequences for GPTQ/AWQ. From the user's data files: every row rendered as training renders it (the
/// training formats through the chat template, or plain <c>text</c>), truncated at maxTokens, exact duplicates dropped,
/// then <c>samples</c> rows drawn with the seed (all of them when there are fewer). From an id file: one sequence of
/// token ids per line (comma- or space-separated), for models without a tokenizer such as an imported llama2.c checkpoint.
/// </summary>
public static class CalibrationSet
{
    public static List<int[]> FromDataFiles(HfTokenizer tokenizer, IReadOnlyList<string> files, int samples, int maxTokens, int seed, Action<string>? report = null)
    {
        Check(samples, maxTokens);
        if (files.Count == 0) throw new ArgumentException("give at least one --data file");
        var formatter = new ExampleFormatter(tokenizer, trainOnPrompt: true);
        var rows = new List<int[]>();
        foreach (var f in files)
        {
            var (examples, summary) = DatasetReader.Read(f, formatter, maxTokens, dedup: true, truncateOverlong: true, maxBadFraction: 0.05);
            report?.Invoke($"{f}: {summary}");
            rows.AddRange(examples.Select(e => e.Ids).Where(ids => ids.Length > 1));
        }
        return Draw(rows, samples, seed, string.Join(", ", files));
    }

    public static List<int[]> FromIdFile(string path, int samples, int maxTokens, int seed)
    {
        Check(samples, maxTokens);
        if (!File.Exists(path)) throw new FileNotFoundException($"calibration id file '{path}' does not exist", path);
        var rows = new List<int[]>();
        int line = 0;
        foreach (var text in File.ReadLines(path))
        {
            line++;
            if (string.IsNullOrWhiteSpace(text)) continue;
            var ids = new List<int>();
            foreach (var part in text.Split([',', ' ', '\t'], StringSplitOptions.RemoveEmptyEntries))
                ids.Add(int.TryParse(part, out int id) && id >= 0 ? id : throw new FormatException($"{path}:{line}: '{part}' is not a token id"));
            rows.Add(ids.Take(maxTokens).ToArray());
        }
        return Draw(rows, samples, seed, path);
    }

    private static void Check(int samples, int maxTokens)
    {
        if (samples < 1) throw new ArgumentException($"--samples must be at least 1, got {samples}");
        if (maxTokens < 2) throw new ArgumentException($"--max-tokens must be at least 2, got {maxTokens}");
    }

    private static List<int[]> Draw(List<int[]> rows, int samples, int seed, string source)
    {
        if (rows.Count == 0) throw new InvalidDataException($"{source}: no usable calibration rows");
        var rng = new Random(seed);
        var order = Enumerable.Range(0, rows.Count).ToArray();
        rng.Shuffle(order);
        return order.Take(samples).Select(i => rows[i]).ToList();
    }
}
