namespace NativeLora.Bench;

/// <summary>What the end-to-end benchmarks (train, roofline, serve) share: their `--name value` arguments and where the repository is.</summary>
internal static class BenchArgs
{
    /// <summary>The value after `--name`, or <paramref name="def"/> when it is not given.</summary>
    public static string Get(string[] args, string name, string def)
    {
        int i = Array.IndexOf(args, "--" + name);
        return i >= 0 && i + 1 < args.Length ? args[i + 1] : def;
    }

    /// <summary>The repository (or the GPU bundle, which mirrors its layout): bench/configs and bench/peer live there.</summary>
    public static string Root()
    {
        var env = Environment.GetEnvironmentVariable("NATIVELORA_ROOT");
        if (!string.IsNullOrEmpty(env)) return env;
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir != null && !File.Exists(Path.Combine(dir.FullName, "native", "include", "nativelora.h"))) dir = dir.Parent;
        return dir?.FullName ?? Directory.GetCurrentDirectory();
    }
}
