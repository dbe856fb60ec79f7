// Fine-tune a model with NativeLora's one training call, then generate with the adapter it wrote.
//   dotnet run -- MODEL DATA OUTPUT_DIR [MAX_STEPS]
// MODEL is a Hugging Face model directory (./build.sh demo writes runs/demo-model); DATA a JSON/JSONL file of
// instruction, messages or ShareGPT rows (data/demo/instructions.jsonl).
using NativeLora.Data;
using NativeLora.Devices;
using NativeLora.Lora;
using NativeLora.Model;
using NativeLora.Text;
using NativeLora.Training;

if (args.Length < 3)
{
    Console.Error.WriteLine("usage: FineTune MODEL DATA OUTPUT_DIR [MAX_STEPS]");
    return 2;
}

// The same schema as `nativelora train --config run.json` (TrainingConfig.Load reads such a file).
var config = new TrainingConfig
{
    Model = args[0], Data = args[1], OutputDir = args[2],
    MaxSteps = args.Length > 3 ? int.Parse(args[3]) : 60,
    MaxSeqLen = 256, MicroBatchSize = 4, GradientAccumulation = 1,
    LearningRate = 5e-3, LoraDropout = 0.0, EvalSteps = 20, SaveSteps = 100, Seed = 42,
};

// Reports arrive in order on this thread: stage lines, warnings, and one per optimizer step.
var progress = new ConsoleProgress();
TrainingResult result;
try
{
    result = Trainer.Run(config, progress);
}
catch (Exception e) when (e is ArgumentException or IOException or InvalidDataException or TrainingStoppedException)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 1;
}
Console.WriteLine($"validation loss {result.ValLossBefore:F4} -> {result.ValLossAfter:F4} in {result.State.GlobalStep} steps; adapter: {result.AdapterDir}");

// Generate with the trained adapter: the model, the PEFT adapter, the chat template and a greedy sampler.
using var device = ComputeDevice.Open();
using var model = ModelDirectory.Load(device, config.Model, device.ResolveDType("auto"));
using var adapter = LoraAdapter.Load(model, result.AdapterDir);
using var tokenizer = HfTokenizer.Load(config.Model);
var prompt = new ExampleFormatter(tokenizer, trainOnPrompt: false).PromptIds(new List<ChatMessage> { new("user", "What is the capital of France?") });
// the ids that end a generation: the tokenizer's EOS, config and generation_config EOS ids, the template's end of turn
var stop = StopRule.For(tokenizer.Directory, model.Config, tokenizer);
var ids = new Generator(model).Generate(prompt, 24, new Sampler(new SamplingOptions(Temperature: 0)), stop.Ids);
Console.WriteLine($"generated {ids.Count} tokens: {tokenizer.Decode(ids.ToArray(), skipSpecialTokens: true)}");
return 0;

sealed class ConsoleProgress : IProgress<TrainingProgress>
{
    public void Report(TrainingProgress p)
    {
        if (p.Kind == TrainingProgressKind.Step) Console.WriteLine($"step {p.Step!.Step}/{p.Step.TotalSteps} loss {p.Step.Loss:F4}");
        else (p.Kind == TrainingProgressKind.Warning ? Console.Error : Console.Out).WriteLine(p.Message);
    }
}
