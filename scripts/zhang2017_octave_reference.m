% Reference outputs of the authors' Zhang et al. 2017 simulation script, for every matrix and
% schedule, written to zhang2017_script_outputs.csv (insilico_trials/data/).
%
% The script itself is not part of this repository (it is the authors' code): get
% Abiraterone_Main.m from github.com/cunninghamjj/Integrating-evolutionary-dynamics-into-
% treatment-of-mCRPC (commit c38b7e4 was used) and run, with GNU Octave (7.3.0 was used):
%
%   octave --no-gui --quiet --eval "script_path='/path/to/Abiraterone_Main.m'; \
%       out_path='/abs/path/zhang2017_script_outputs.csv'; run('scripts/zhang2017_octave_reference.m')"
% (run() changes to this file's folder, so give out_path as an absolute path)
%
% The script runs unchanged except: its plotting section (from '%% Plotting' on) is dropped,
% and its two choice lines (matrixIndex = 5; treatmentType = 'Adaptive';) are replaced by each
% matrix and schedule in turn. Values are printed with 17 significant digits.
src = fileread(script_path);
cut = strfind(src, '%% Plotting');
if isempty(cut), error('no plotting section found: is this Abiraterone_Main.m?'); end
src = src(1:cut(1) - 1);
if isempty(strfind(src, 'matrixIndex = 5;')) || isempty(strfind(src, 'treatmentType = ''Adaptive'';'))
  error('the choice lines of Abiraterone_Main.m were not found');
end
types = {'None', 'SOC', 'Metronomic', 'Adaptive'};
fid = fopen(out_path, 'w');
fprintf(fid, '# Outputs of Abiraterone_Main.m (Zhang et al. Nat Commun 2017;8:1816; github.com/cunninghamjj/Integrating-evolutionary-dynamics-into-treatment-of-mCRPC commit c38b7e4), run under GNU Octave %s by scripts/zhang2017_octave_reference.m; indices are the script''s (1 = initial state); NaN = never within 10000 steps\n', version());
fprintf(fid, 'matrix,treatment,first_treatment_time,time_to_5_percent,time_to_90_percent,percentage_of_soc,final_tplus,final_tp,final_tminus,final_psa\n');
for mi = 1:22
  for ti = 1:numel(types)
    s = strrep(src, 'matrixIndex = 5;', sprintf('matrixIndex = %d;', mi));
    s = strrep(s, 'treatmentType = ''Adaptive'';', sprintf('treatmentType = ''%s'';', types{ti}));
    eval(s);
    t5 = timeTo5Percent; if isempty(t5), t5 = NaN; end
    t90 = timeTo90Percent; if isempty(t90), t90 = NaN; end
    fprintf(fid, '%d,%s,%d,%g,%g,%.17g,%.17g,%.17g,%.17g,%.17g\n', mi, types{ti}, ...
            firstTreatmentTime, t5, t90, percentageOfSOC, y(1), y(2), y(3), y(4));
  end
end
fclose(fid);
