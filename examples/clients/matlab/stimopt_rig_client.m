function n_done = stimopt_rig_client(rig_dir, opts)
% STIMOPT_RIG_CLIENT  The lab's side of stimopt's file protocol (stimopt-rig/1), for MATLAB/Octave.
%
%   n = stimopt_rig_client(RIG_DIR)          serve RIG_DIR until RIG_DIR/STOP exists or idle
%   n = stimopt_rig_client(RIG_DIR, opts)    with options (a struct, every field optional):
%       opts.present    function handle  counts = present(img, index, repeat, manifest), img an
%                                        H x W x 3 uint8 image; returns one spike count per
%                                        channel (manifest.n_channels values). THIS IS WHERE THE
%                                        MONKEYLOGIC TASK CODE GOES (see below). Default: a fake
%                                        neuron, mean pixel intensity x opts.gain, for testing.
%       opts.gain       fake neuron's gain (default 0.1)
%       opts.poll_s     seconds between looks at the outbox (default 0.05)
%       opts.idle_exit  stop after this many seconds without a new generation (default 60)
%       opts.max_generations  stop after this many generations (default Inf)
%   Returns the number of generations presented.
%
% What it does, per generation (docs/neural_targets.md, "The protocol"):
%   1. Poll RIG_DIR/outbox/ for gen_NNNNNN/manifest.json. stimopt publishes a generation
%      atomically (a renamed folder), so a manifest that is there is complete.
%   2. Skip a (generation, request_id) already presented: they are recorded in
%      RIG_DIR/client_presented.txt, so a restarted client does not present anything twice.
%      (A resumed stimopt that re-asks the same images does not publish them again either.)
%   3. Load the images (imread of each manifest.images(k).file; target.image_format=png).
%   4. Present each image manifest.repeats times, every image once per repeat.
%   5. After each trial, append one JSON line to the manifest's inbox file (RIG_DIR/inbox/...):
%        {"generation":12,"index":3,"repeat":0,"counts":[5]}
%      and after the last trial {"generation":12,"done":true}. Lines are appended, never
%      rewritten; each ends with a newline. A trial that failed (the animal broke fixation) is
%      simply not written, or written later with the same repeat number: stimopt uses the first
%      valid trial per (index, repeat) and records missing images as NaN.
%
% MonkeyLogic: replace opts.present by a function that shows IMG (e.g. as the TaskObject of a
% trial with the timing file's fixation/stimulus epochs), reads the spike counts of the
% stimulus window from your recording system, and returns them (one per channel). To send spike
% times instead (stimopt-rig/2, stimopt counts them in target.window and target.baseline_window),
% return a struct with field "spikes" = a cell array of one row vector of times (s after onset)
% per channel; the line then carries "spikes" instead of "counts".
%
% Runs in GNU Octave >= 7 and MATLAB >= R2016b (jsondecode/jsonencode).
  if nargin < 2, opts = struct(); end
  gain = getopt(opts, 'gain', 0.1);
  present = getopt(opts, 'present', @(img, index, repeat, manifest) fake_neuron(img, gain, manifest));
  poll_s = getopt(opts, 'poll_s', 0.05);
  idle_exit = getopt(opts, 'idle_exit', 60);
  max_generations = getopt(opts, 'max_generations', Inf);

  done_log = fullfile(rig_dir, 'client_presented.txt');
  presented = read_presented(done_log);
  n_done = 0;
  last = tic;
  while true
    if exist(fullfile(rig_dir, 'STOP'), 'file'), break; end
    if n_done >= max_generations, break; end
    if toc(last) > idle_exit, break; end
    found = false;
    entries = dir(fullfile(rig_dir, 'outbox', 'gen_*'));
    names = sort({entries([entries.isdir]).name});
    for k = 1:numel(names)
      folder = fullfile(rig_dir, 'outbox', names{k});
      manifest_file = fullfile(folder, 'manifest.json');
      if ~exist(manifest_file, 'file'), continue; end
      try
        manifest = jsondecode(fileread(manifest_file));
      catch
        continue;  % not a manifest stimopt published
      end
      key = sprintf('%d %s', manifest.generation, manifest.request_id);
      if any(strcmp(presented, key)), continue; end
      present_generation(rig_dir, folder, manifest, present);
      append_text(done_log, [key char(10)]);
      presented{end + 1} = key;
      n_done = n_done + 1;
      found = true;
      last = tic;
    end
    if ~found, pause(poll_s); end
  end
end

function present_generation(rig_dir, folder, manifest, present)
  images = manifest.images;
  n = numel(images);
  pix = cell(1, n);
  for k = 1:n
    pix{k} = imread(fullfile(folder, images(k).file));
    if size(pix{k}, 3) == 1, pix{k} = repmat(pix{k}, [1 1 3]); end
  end
  inbox = fullfile(rig_dir, strrep(manifest.inbox, '/', filesep));
  for r = 0:manifest.repeats - 1
    for k = 1:n
      index = images(k).index;
      answer = present(pix{k}, index, r, manifest);
      line = struct('generation', manifest.generation, 'index', index, 'repeat', r);
      if isstruct(answer) && isfield(answer, 'spikes')
        line.spikes = cellfun(@(t) num2cell(t(:)'), answer.spikes, 'UniformOutput', false);
      else
        line.counts = num2cell(double(answer(:)'));
      end
      append_text(inbox, [jsonencode(line) char(10)]);
    end
  end
  append_text(inbox, [jsonencode(struct('generation', manifest.generation, 'done', true)) char(10)]);
end

function counts = fake_neuron(img, gain, manifest)
  % A deterministic stand-in for the animal: mean pixel intensity (0..255) x gain, every channel.
  counts = repmat(mean(double(img(:))) * gain, 1, manifest.n_channels);
end

function append_text(path, text)
  fid = fopen(path, 'a');
  if fid < 0, error('stimopt_rig_client: cannot append to %s', path); end
  fwrite(fid, text);
  fclose(fid);
end

function keys = read_presented(path)
  keys = {};
  if ~exist(path, 'file'), return; end
  text = fileread(path);
  lines = strsplit(text, char(10));
  keys = lines(~cellfun(@isempty, lines));
end

function v = getopt(opts, name, default)
  if isfield(opts, name), v = opts.(name); else, v = default; end
end
