using System.Diagnostics;
using System.IO.Compression;
using System.Xml.Linq;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Packaging;

/// <summary>
/// The NuGet packages as a user meets them: `dotnet pack` of the built projects into a local feed, then
/// samples/FineTune restored from that feed (nothing from the repository's build) fine-tunes the demo model
/// through Trainer.Run and generates, and the NativeLora.Cli tool installs and runs.
/// </summary>
public class PackageTests : TempDirTests
{
    private static string Root => Native.BindingCoverageTests.RepoRoot();

    private static (int Code, string Out, string Err) Exec(string file, string? dir, IReadOnlyDictionary<string, string>? env, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = dir ?? Root };
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        psi.Environment["DOTNET_NOLOGO"] = "1";
        psi.Environment.Remove("MSBuildSDKsPath"); // the test host's msbuild settings are not the child's
        psi.Environment.Remove("MSBUILD_EXE_PATH");
        if (env != null) foreach (var (k, v) in env) psi.Environment[k] = v;
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        Assert.That(p.WaitForExit(900_000), Is.True, $"{file} {string.Join(' ', args)} did not finish in 15 minutes");
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    private static XElement Nuspec(string nupkg)
    {
        using var zip = ZipFile.OpenRead(nupkg);
        var entry = zip.Entries.Single(e => e.FullName.EndsWith(".nuspec"));
        using var s = entry.Open();
        return XDocument.Load(s).Root!.Elements().Single(e => e.Name.LocalName == "metadata");
    }

    private static string? Meta(XElement metadata, string name) => metadata.Elements().FirstOrDefault(e => e.Name.LocalName == name)?.Value;

    private static string[] Files(string nupkg)
    {
        using var zip = ZipFile.OpenRead(nupkg);
        return zip.Entries.Select(e => e.FullName).ToArray();
    }

    [Test]
    public void PackRestoreAndRunTheSampleAndTheTool()
    {
        var feed = Path.Combine(Dir, "feed");
        var core = Path.Combine(Root, "artifacts", "native", "libnativelora.so");
        Assert.That(File.Exists(core), Is.True, $"{core} is missing: build with ./build.sh");
        foreach (var project in new[] { "kernels/NativeLora.Kernels", "managed/NativeLora", "managed/NativeLora.Cli" })
        {
            // --no-build: packs what ./build.sh built (rebuilding would overwrite the assemblies this test runs from)
            var (code, o, e) = Exec("dotnet", null, null, "pack", Path.Combine(Root, project), "-c", "Release", "--no-build", "-nologo", "-o", feed, $"-p:NativeLoraCpuCore={core}");
            Assert.That(code, Is.EqualTo(0), $"dotnet pack {project}:\n{o}\n{e}");
        }
        string version = Meta(Nuspec(Path.Combine(feed, Directory.GetFiles(feed, "NativeLora.0*.nupkg").Select(Path.GetFileName).Single()!)), "version")!;

        // the library: its assembly, the CPU core where the runtime looks for a linux-x64 native asset, and the metadata
        var lib = Path.Combine(feed, $"NativeLora.{version}.nupkg");
        var meta = Nuspec(lib);
        Assert.That(Files(lib), Does.Contain("lib/net10.0/NativeLora.dll").And.Contain("runtimes/linux-x64/native/libnativelora.so").And.Contain("README.md"));
        Assert.That(Meta(meta, "license"), Is.Not.Null.And.Not.Empty);
        Assert.That(Meta(meta, "readme"), Is.EqualTo("README.md"));
        Assert.That(Meta(meta, "description"), Does.Contain("Trainer.Run"));
        Assert.That(meta.Descendants().Where(e => e.Name.LocalName == "dependency").Select(e => e.Attribute("id")!.Value), Does.Contain("NativeLora.Kernels"));
        Assert.That(File.Exists(Path.Combine(feed, $"NativeLora.Kernels.{version}.nupkg")), Is.True);
        // the CLI: a .NET tool named nativelora
        var tool = Path.Combine(feed, $"NativeLora.Cli.{version}.nupkg");
        Assert.That(Nuspec(tool).Descendants().Any(e => e.Name.LocalName == "packageType" && e.Attribute("name")?.Value == "DotnetTool"), Is.True);
        Assert.That(Files(tool), Does.Contain("tools/net10.0/any/DotnetToolSettings.xml").And.Contain("tools/net10.0/any/libnativelora.so"));

        // restores come from the feed and from what this machine already holds; package extraction goes to a fresh folder
        var globalPackages = Environment.GetEnvironmentVariable("NUGET_PACKAGES") ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        var env = new Dictionary<string, string> { ["NUGET_PACKAGES"] = Path.Combine(Dir, "packages") };
        var config = Path.Combine(Dir, "nuget.config");
        File.WriteAllText(config, $"""
            <?xml version="1.0" encoding="utf-8"?>
            <configuration>
              <packageSources><clear /><add key="feed" value="{feed}" /></packageSources>
              <fallbackPackageFolders><add key="machine" value="{globalPackages}" /></fallbackPackageFolders>
            </configuration>
            """);

        // the sample, copied out of the repository so nothing of its build settings applies
        var sample = Path.Combine(Dir, "FineTune");
        Directory.CreateDirectory(sample);
        foreach (var f in new[] { "FineTune.csproj", "Program.cs" }) File.Copy(Path.Combine(Root, "samples", "FineTune", f), Path.Combine(sample, f));
        File.Copy(config, Path.Combine(sample, "nuget.config"));
        var model = Path.Combine(Dir, "demo-model");
        var (c1, o1, e1) = Cli.CliTests.Run("init-model", "--config", Path.Combine(Root, "data", "demo", "tiny-llama.json"), "--tokenizer", NativeLora.Tests.Text.TokenizerReference.Dir("mistral"), "--out", model, "--seed", "0");
        Assert.That(c1, Is.EqualTo(0), e1);
        var run = Path.Combine(Dir, "run");
        var (c2, o2, e2) = Exec("dotnet", sample, env, "run", "-c", "Release", "--", model, Path.Combine(Root, "data", "demo", "instructions.jsonl"), run, "3");
        Assert.That(c2, Is.EqualTo(0), $"{o2}\n{e2}");
        Assert.That(o2, Does.Contain("trainable parameters:").And.Contain("step 3/3 loss").And.Match(@"validation loss [\d.]+ -> [\d.]+ in 3 steps"));
        Assert.That(o2, Does.Match(@"generated \d+ tokens: "));
        Assert.That(File.Exists(Path.Combine(run, "adapter", "adapter_model.safetensors")), Is.True);
        Assert.That(Directory.GetFiles(Path.Combine(Dir, "packages"), "*.nupkg", SearchOption.AllDirectories).Select(Path.GetFileName),
            Does.Contain($"nativelora.{version}.nupkg"), "the library came from the feed");

        // the tool
        var tools = Path.Combine(Dir, "tools");
        var (c3, o3, e3) = Exec("dotnet", Dir, env, "tool", "install", "NativeLora.Cli", "--version", version, "--tool-path", tools, "--configfile", config);
        Assert.That(c3, Is.EqualTo(0), $"{o3}\n{e3}");
        var (c4, o4, e4) = Exec(Path.Combine(tools, "nativelora"), Dir, null, "--version");
        Assert.That(c4, Is.EqualTo(0), e4);
        Assert.That(o4, Does.StartWith($"nativelora {version}"));
        var (c5, o5, e5) = Exec(Path.Combine(tools, "nativelora"), Dir, null, "info");
        Assert.That(c5, Is.EqualTo(0), e5);
        Assert.That(o5, Does.Contain("native backend: "), "the tool loads the native core it carries");
    }

    [Test]
    public void TheCudaCoreIsTriedFirstOnlyWhereItCanRun()
    {
        Assert.That(NativeLora.Native.NativeLibraryResolver.CandidateNames(preferCpu: false, cudaDriver: true), Is.EqualTo(new[] { "nativelora_cuda", "nativelora" }));
        Assert.That(NativeLora.Native.NativeLibraryResolver.CandidateNames(preferCpu: true, cudaDriver: true), Is.EqualTo(new[] { "nativelora" }));
        Assert.That(NativeLora.Native.NativeLibraryResolver.CandidateNames(preferCpu: false, cudaDriver: false), Is.EqualTo(new[] { "nativelora" }));
        Assert.That(NativeLora.Native.NativeLibraryResolver.FileName("nativelora_cuda"), Is.EqualTo(OperatingSystem.IsWindows() ? "nativelora_cuda.dll" : "libnativelora_cuda.so"));
        var cudaProject = File.ReadAllText(Path.Combine(Root, "packaging", "NativeLora.Runtime.Cuda", "NativeLora.Runtime.Cuda.csproj"));
        Assert.That(cudaProject, Does.Contain("runtimes/linux-x64/native/libnativelora_cuda.so"), "the CUDA package ships the file name the resolver looks for");
    }
}
