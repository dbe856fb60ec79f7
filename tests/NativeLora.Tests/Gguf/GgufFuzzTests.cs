using System.Diagnostics;
using NativeLora.Gguf;
using NativeLora.Tests.SafeTensors;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Gguf;

/// <summary>
/// Seeded random mutations of valid GGUF files. Every open must either succeed with every tensor
/// inside the file and readable, or throw GgufFormatException naming the file; anything else is a bug.
/// The seed comes from the clock unless NATIVELORA_FUZZ_SEED is set, and is printed. Bounded to a
/// fixed number of files.
/// </summary>
public class GgufFuzzTests : TempDirTests
{
    const int Iterations = 600; // a fixed count, not a time budget: the same seed checks the same files on any machine

    static int Seed()
    {
        string? env = Environment.GetEnvironmentVariable("NATIVELORA_FUZZ_SEED");
        return env is not null && int.TryParse(env, out int s) ? s : Environment.TickCount;
    }

    List<byte[]> BaseFiles()
    {
        var rng = new Random(11);
        float[] F(int n) { var a = new float[n]; for (int i = 0; i < n; i++) a[i] = (float)(rng.NextDouble() - 0.5); return a; }
        byte[] B(int n) { var b = new byte[n]; rng.NextBytes(b); return b; }
        var writers = new[]
        {
            new GgufWriter()
                .Set("general.architecture", "llama").Set("llama.block_count", 2u).Set("llama.rope.freq_base", 10000f)
                .Set("tokenizer.ggml.tokens", GgufValue.Array(new[] { "<s>", "</s>", "a", "é" }))
                .Set("tokenizer.ggml.scores", GgufValue.Array(new[] { 0f, 0f, -1f, -2f }))
                .Set("flags", GgufValue.Array(new[] { true, false })).Set("big", GgufValue.U64(1ul << 40)).Set("ok", true)
                .AddTensor("token_embd.weight", GgmlType.Q8_0, [2, 32], () => F(64))
                .AddTensor("blk.0.attn_q.weight", GgmlType.Q4_K, [1, 256], () => F(256))
                .AddTensor("output_norm.weight", GgmlType.F32, [3], () => F(3))
                .AddTensor("blk.0.ffn_down.weight", GgmlType.Q6_K, [1, 256], () => F(256)),
            new GgufWriter(),
            new GgufWriter(8).AddTensor("w", GgmlType.F16, [2, 2], B(8)).AddTensor("v", GgmlType.BF16, [3], B(6)),
            new GgufWriter().Set("s", "x").AddTensor("q", GgmlType.Q5_K, [256], () => F(256)).AddTensor("z", GgmlType.Q4_0, [0, 32], ReadOnlyMemory<byte>.Empty),
        };
        var result = new List<byte[]>();
        foreach (var w in writers)
        {
            using var ms = new MemoryStream();
            w.WriteTo(ms);
            result.Add(ms.ToArray());
        }
        return result;
    }

    static byte[] Mutate(Random rng, byte[] src, out string what)
    {
        var b = (byte[])src.Clone();
        switch (rng.Next(7))
        {
            case 0:
            {
                int k = rng.Next(1, 6);
                var at = new List<int>();
                for (int i = 0; i < k; i++) { int p = rng.Next(b.Length); at.Add(p); b[p] ^= (byte)rng.Next(1, 256); }
                what = $"flip bytes at [{string.Join(",", at)}]";
                return b;
            }
            case 1:
            {
                int len = rng.Next(b.Length);
                what = $"truncate to {len}";
                return b[..len];
            }
            case 2:
            {
                // Overwrite an aligned 4- or 8-byte word (counts, lengths, types, dims, offsets) with an interesting value.
                int width = rng.Next(2) == 0 ? 4 : 8;
                int p = rng.Next(Math.Max(1, (b.Length - width) / 4)) * 4;
                ulong[] values = [0, 1, 2, 3, 4, 5, 9, 12, 13, 31, 32, 63, 64, 255, 256, 65535, 0x7fffffff, 0xffffffff, 1ul << 32, 1ul << 62, ulong.MaxValue, (ulong)rng.NextInt64()];
                ulong v = values[rng.Next(values.Length)];
                for (int i = 0; i < width && p + i < b.Length; i++) b[p + i] = (byte)(v >> (8 * i));
                what = $"u{width * 8} at {p} := {v}";
                return b;
            }
            case 3:
            {
                var extra = new byte[rng.Next(1, 80)];
                rng.NextBytes(extra);
                what = $"append {extra.Length}";
                return [.. b, .. extra];
            }
            case 4:
            {
                int p = rng.Next(b.Length), n = Math.Min(rng.Next(1, 40), b.Length - p);
                what = $"delete {n} at {p}";
                return [.. b[..p], .. b[(p + n)..]];
            }
            case 5:
            {
                int p = rng.Next(b.Length);
                var ins = new byte[rng.Next(1, 16)];
                rng.NextBytes(ins);
                what = $"insert {ins.Length} at {p}";
                return [.. b[..p], .. ins, .. b[p..]];
            }
            default:
            {
                var once = Mutate(rng, b, out string w1);
                if (once.Length == 0) { what = w1; return once; }
                var twice = Mutate(rng, once, out string w2);
                what = w1 + " then " + w2;
                return twice;
            }
        }
    }

    static void ExerciseAll(GgufFile f)
    {
        foreach (var kv in f.Metadata) Assert.That(kv.Value.ToString(), Is.Not.Null);
        foreach (var t in f.Tensors)
        {
            Assert.That(f.DataOffset + t.Offset + t.ByteLength, Is.LessThanOrEqualTo(new FileInfo(f.Path).Length));
            var bytes = f.GetBytes(t.Name);
            int sum = 0;
            foreach (var x in bytes) sum += x; // touch every mapped byte
            if (GgmlQuants.CanDecode(t.Type)) Assert.That(f.ReadAsFloat32(t.Name).LongLength, Is.EqualTo(t.ElementCount));
        }
    }

    [Test]
    public void MutatedFilesOpenOrFailWithFormatException()
    {
        int seed = Seed();
        TestContext.Out.WriteLine($"gguf fuzz seed: {seed} (replay with NATIVELORA_FUZZ_SEED={seed})");
        var rng = new Random(seed);
        var bases = BaseFiles();
        string path = Path.Combine(Dir, "fuzz.gguf");
        foreach (var b in bases)
        {
            File.WriteAllBytes(path, b);
            using var f = GgufFile.Open(path); // unmutated inputs are valid
        }
        int opened = 0, rejected = 0, i = 0;
        var clock = Stopwatch.StartNew();
        for (; i < Iterations; i++)
        {
            var bytes = Mutate(rng, bases[rng.Next(bases.Count)], out string what);
            File.WriteAllBytes(path, bytes);
            try
            {
                using var f = GgufFile.Open(path);
                ExerciseAll(f);
                opened++;
            }
            catch (GgufFormatException e)
            {
                if (!e.Message.StartsWith(path + ":", StringComparison.Ordinal))
                    Assert.Fail($"seed {seed}, iteration {i}, mutation {what}: message lacks the path: {e.Message}");
                rejected++;
            }
            catch (Exception e) when (e is not AssertionException)
            {
                Assert.Fail($"seed {seed}, iteration {i}, mutation {what}: unexpected {e.GetType().Name}: {e}");
            }
        }
        TestContext.Out.WriteLine($"{i} mutated files in {clock.Elapsed.TotalSeconds:F1} s: {opened} opened, {rejected} rejected");
        Assert.That(rejected, Is.GreaterThan(i / 10), "mutations should mostly break files");
        Assert.That(opened, Is.GreaterThan(0), "some mutations (data bytes, trailing bytes) leave files valid");
    }
}
